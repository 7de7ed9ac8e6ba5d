"""Result caches: protocol and errors in `base`, one module per backend, a factory that picks one."""
