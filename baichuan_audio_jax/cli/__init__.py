"""The ``baichuan-audio`` command line: one module per subcommand."""
