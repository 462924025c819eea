"""Model families: spec tables and ModelDefs, one file per family."""
