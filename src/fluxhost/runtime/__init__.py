"""The worker side: what runs tasks, in whichever process runs them (the API's worker threads, the
child worker process, a Celery worker). Nothing here imports the API process's modules: the
service, the doors, the hosted protocol."""
