"""pyfetch: a fetchmail-compatible POP3/IMAP retrieval daemon."""

__version__ = "0.1.0"

# The fetchmail release whose behaviour, rcfile grammar and options pyfetch follows.
FETCHMAIL_COMPAT = "6.4.37"
