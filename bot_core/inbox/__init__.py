"""The operator inbox: web pages where people see conversations and take over from the bot."""
