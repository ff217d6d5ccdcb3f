"""shopvault: the customer personal-data service of a chain of mobile-phone shops."""
