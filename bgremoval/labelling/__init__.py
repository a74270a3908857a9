"""Getting masks for a folder of photos: a model's drafts, ranked by how much correction each probably
needs, corrected by a person in Label Studio and pulled back as masks."""
