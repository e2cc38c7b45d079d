"""The broker and the job store: Celery app, tasks, job stores, and the API's door to them."""
