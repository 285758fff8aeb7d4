"""``python -m dpr.export {peft,sentence-transformers,import} ...``: see dpr/commands/export.py."""

from dpr.commands.export import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
