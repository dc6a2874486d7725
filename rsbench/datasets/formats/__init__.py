"""One module per annotation file format; each returns ImageRecords for assembly."""
