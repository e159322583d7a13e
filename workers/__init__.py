"""Worker-side code: contract/ (shared with the gateway), common/, inference/, finetune/."""
