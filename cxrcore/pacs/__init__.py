"""Where the images live: results as DICOM objects (a Structured Report of the findings, the heatmap as a
secondary capture) and a PACS over DICOMweb (search, retrieve, store). See docs/pacs.md."""
