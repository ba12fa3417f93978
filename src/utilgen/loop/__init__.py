"""The round engine and the demo."""
