"""Asset storage: protocol, keys and errors in `base`, one module per backend, a factory that picks one."""
