"""One thin KFP component per stage; each calls `chromify.stages` and moves artifacts in and out."""
