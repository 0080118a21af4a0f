"""The job side: what runs on a compute node (or in the foreground locally). Imports torch lazily."""
