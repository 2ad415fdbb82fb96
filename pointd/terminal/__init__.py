"""Point terminals at the checkout: USB discovery, hot-plug, identity, health."""
