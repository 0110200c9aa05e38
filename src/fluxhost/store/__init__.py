"""The database, by side: what the API does (tasks, keys), what workers do (work), and the
callback deliveries; the schema and its migrations."""
