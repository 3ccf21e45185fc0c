"""Kernel settings for the tutorial; scripts/setup.sh copies this file into the venv
(.venv/etc/ipython/ipython_kernel_config.py, where every kernel of the venv reads it)."""

c = get_config()  # noqa: F821 (defined by IPython when it loads this file)

# The kernel's own log (not cell output): without this, every kernel that starts warns that it talks to the
# server over TCP without encryption, which on localhost is the normal set-up. (IPC sockets would avoid it, but
# their paths must fit in 107 characters, which a long runtime folder breaks.)
c.IPKernelApp.log_level = "ERROR"
