"""``python -m dpr.route summarize ...``: task summaries for per-query routing (see dpr/commands/route.py)."""

from dpr.commands.route import cli

if __name__ == "__main__":
    cli()
