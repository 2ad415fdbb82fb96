"""The technician's control socket (newline-delimited JSON over a unix socket) and pointctl."""
