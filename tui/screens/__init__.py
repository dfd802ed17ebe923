"""The screens and dialogs of the TUI, one module each."""
