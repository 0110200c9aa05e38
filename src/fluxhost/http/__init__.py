"""HTTP plumbing every door shares: reading bodies, running blocking work off the event loop, and
answering refusals from a table."""
