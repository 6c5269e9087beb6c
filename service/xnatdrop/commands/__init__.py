"""One module per `xnatdrop` subcommand; each exposes `add_parser(subparsers)`."""
