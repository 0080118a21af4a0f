"""Built-in tasks: functions taking (config, JobContext). Job side."""
