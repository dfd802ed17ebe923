"""Pure renderers for the detail view: a `Call` (or a part of one) in, Rich renderables or Textual
widgets out, one module per thing shown.

They never touch the hub, the app or the clock, so they are unit tested without a running app
(tests/tui/test_render.py) and the detail screen only arranges what they return. Keep this
`__init__` empty of imports: screens import the module they need.
"""
