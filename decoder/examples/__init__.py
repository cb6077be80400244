"""Programs to copy and adapt, installed with the package and run as ``python -m neurocine.decoder.examples.<name>``.

- `closed_loop`: act on the decoded movie live (calibrate a target detector on the rig, then command the rig
  when the target appears); its `act()` is the place for an experiment's own action.
"""
