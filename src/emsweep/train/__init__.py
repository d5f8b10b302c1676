"""TRL SFTTrainer runner, offline model init, checkpoint schedule and resume."""
