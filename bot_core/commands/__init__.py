"""The subcommands of ``bot-core``, one module per area; ``bot_core.cli`` assembles the group."""
