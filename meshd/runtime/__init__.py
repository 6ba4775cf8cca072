"""The trio runtime: the only code in meshd that does I/O and imports trio."""
