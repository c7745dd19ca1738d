"""echo: replies with what it was sent, numbered per conversation. The demo bot's plugin.

Settings (``[profiles.NAME.plugin_config.echo]``): ``prefix``, text put before the echo
(default ``"echo "``).
"""

from bot_core import hookimpl


@hookimpl(trylast=True)
def handle_message(message, conversation, config):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"{config.get('prefix', 'echo ')}{message.text} #{n}"
