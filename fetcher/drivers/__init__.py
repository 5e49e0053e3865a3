"""Mailbox drivers: POP3 (poplib) and IMAP (imapclient) behind one interface."""
