-- Index queries filter and sort one index's entries by value (GET /machines/{m}/indexes/{i}/query).
CREATE INDEX index_entries_by_value ON index_entries (index_name, value);
