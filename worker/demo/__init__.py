"""The layerq reference deployment: a page that submits jobs and watches them run."""
