"""Delivery: the outbox worker, its channels (email, webhooks, log), the email templates, the users' preferences."""
