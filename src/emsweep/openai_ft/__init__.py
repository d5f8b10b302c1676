"""The gpt-4o arm: uploads, fine-tuning jobs, the ledger, checkpoints, and evaluation through the API."""
