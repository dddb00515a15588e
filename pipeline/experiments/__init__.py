"""The experiments the tools plan, run and record: the real-data study (`study`), the size sweep
of the planted tasks (`sweep`), the ledger both keep of their finished runs (`ledger`), the DVC
queue they run in (`queue`) and the agreement of attention maps between seeds (`stability`).
Imports the core and the feature packages; the commands are in pipeline/tools."""
