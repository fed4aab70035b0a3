"""Migration scripts, applied in order by Alembic (this file only makes the folder a package)."""
