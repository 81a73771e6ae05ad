"""``ddsync replay``: reading the dead-letter topic and producing chosen letters again."""
