"""The command-line tools: argparse -> typed settings -> a library call -> printed summary.

Each module has ``main(argv) -> exit status`` and ``cli()`` (the console entry point). The root
scripts (prepare_data.py, download_data.py, export_peft.py) only forward to them.
"""
