"""The Discord bot: services (storage, jobs, settings) between the cogs and omost_engine."""
