"""The live viewer (`neurocine view`): a consumer of the decoded stream, its own process, so a GUI can never
block the decoder. `state` is the Qt-free part; `window` is the pyqtgraph window; `qt_checks` refuses a Qt
binding or display that cannot run it."""
