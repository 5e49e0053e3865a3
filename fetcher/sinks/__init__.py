"""Sinks hand a message to the local MTA: SMTP, LMTP, an MDA command, or a BSMTP file."""
