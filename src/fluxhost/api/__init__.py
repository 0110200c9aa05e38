"""The HTTP and socket surface: parse, authenticate, call the core, render the wire format."""
