"""Results as data: Result -> pandas -> metrics.json + table.csv + table.md; aggregation and gates."""
