"""Training of LCZ networks: streaming dataset readers, augmentation, the released training recipes, city sampling and plots."""
