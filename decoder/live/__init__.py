"""The live decoder: the decode service (`neurocine decode`), the decoded-frame message it publishes, the
pipeline that wires a source to it, and the demo built on that pipeline."""
