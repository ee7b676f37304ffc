"""Running migrations: one end (send, receive, check), both ends on one machine, drain, and the control socket."""
