"""The sync engine: plan (pure diff), apply (batched writes), runner (one run) and lock (one run per source)."""
