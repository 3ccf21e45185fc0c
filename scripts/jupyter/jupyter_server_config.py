"""JupyterLab server settings for the tutorial; scripts/setup.sh copies this file into the venv
(.venv/etc/jupyter/jupyter_server_config.py), so `make lab` and any `jupyter lab` of the venv use it."""

c = get_config()  # noqa: F821 (defined by Jupyter when it loads this file)

# No language servers are installed: do not look for two dozen of them and list the missing ones at start-up.
c.LanguageServerManager.autodetect = False

# Opening a notebook must not change it on disk (JupyterLab rewrites language_info): see the hook.
c.FileContentsManager.pre_save_hook = "qviz.jupyter_hooks.keep_committed_metadata"
