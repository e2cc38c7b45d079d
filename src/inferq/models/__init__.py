"""Models bundled with inferq. Each is light to import; frameworks load in ``setup()``."""
