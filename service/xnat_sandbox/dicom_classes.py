"""What XNAT's DICOM receiver accepts: storage SOP classes and transfer syntaxes.

Copied from XNAT's `DicomSCP.TSUIDS` and `CStoreService.CUIDS` (web/src/main/java/org/nrg/dcm/
scp/DicomSCP.java, CStoreService.java; dcm4che2 `UID` names in the comments). A presentation
context for any other SOP class or transfer syntax is refused, as there (deflated explicit VR
little endian is not in the list, nor are the newer storage classes CUIDS lacks).
"""

from __future__ import annotations

#: `DicomSCP.VERIFICATION_SOP_TS`: "Verification service can only use LE encoding".
VERIFICATION_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

#: `DicomSCP.TSUIDS`: "Accept just about anything".
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # ExplicitVRLittleEndian
    "1.2.840.10008.1.2.2",  # ExplicitVRBigEndian
    "1.2.840.10008.1.2",  # ImplicitVRLittleEndian
    "1.2.840.10008.1.2.4.50",  # JPEGBaseline1
    "1.2.840.10008.1.2.4.51",  # JPEGExtended24
    "1.2.840.10008.1.2.4.57",  # JPEGLosslessNonHierarchical14
    "1.2.840.10008.1.2.4.70",  # JPEGLossless
    "1.2.840.10008.1.2.4.80",  # JPEGLSLossless
    "1.2.840.10008.1.2.4.81",  # JPEGLSLossyNearLossless
    "1.2.840.10008.1.2.4.90",  # JPEG2000LosslessOnly
    "1.2.840.10008.1.2.4.91",  # JPEG2000
    "1.2.840.10008.1.2.4.92",  # JPEG2000Part2MultiComponentLosslessOnly
    "1.2.840.10008.1.2.4.93",  # JPEG2000Part2MultiComponent
    "1.2.840.10008.1.2.4.94",  # JPIPReferenced
    "1.2.840.10008.1.2.4.95",  # JPIPReferencedDeflate
    "1.2.840.10008.1.2.4.100",  # MPEG2
    "1.2.840.10008.1.2.5",  # RLELossless
    "1.2.840.10008.1.2.6.1",  # RFC2557MIMEEncapsulation
    "1.2.840.10008.1.2.6.2",  # XMLEncoding
)

#: `CStoreService.CUIDS`, in its order: the named ones, Philips' private ones, then the UIDs
#: XNAT lists as literals ("new additions to the DICOM standard").
STORAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # ComputedRadiographyImageStorage
    "1.2.840.10008.5.1.4.1.1.1.1",  # DigitalXRayImageStorageForPresentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DigitalXRayImageStorageForProcessing
    "1.2.840.10008.5.1.4.1.1.1.2",  # DigitalMammographyXRayImageStorageForPresentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # DigitalMammographyXRayImageStorageForProcessing
    "1.2.840.10008.5.1.4.1.1.1.3",  # DigitalIntraOralXRayImageStorageForPresentation
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # DigitalIntraOralXRayImageStorageForProcessing
    "1.2.840.10008.5.1.4.1.1.2",  # CTImageStorage
    "1.2.840.10008.5.1.4.1.1.2.1",  # EnhancedCTImageStorage
    "1.2.840.10008.5.1.4.1.1.3.1",  # UltrasoundMultiFrameImageStorage
    "1.2.840.10008.5.1.4.1.1.4",  # MRImageStorage
    "1.2.840.10008.5.1.4.1.1.4.1",  # EnhancedMRImageStorage
    "1.2.840.10008.5.1.4.1.1.4.2",  # MRSpectroscopyStorage
    "1.2.840.10008.5.1.4.1.1.6.1",  # UltrasoundImageStorage
    "1.2.840.10008.5.1.4.1.1.7",  # SecondaryCaptureImageStorage
    "1.2.840.10008.5.1.4.1.1.7.1",  # MultiFrameSingleBitSecondaryCaptureImageStorage
    "1.2.840.10008.5.1.4.1.1.7.2",  # MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    "1.2.840.10008.5.1.4.1.1.7.3",  # MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    "1.2.840.10008.5.1.4.1.1.7.4",  # MultiFrameTrueColorSecondaryCaptureImageStorage
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # TwelveLeadECGWaveformStorage
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # GeneralECGWaveformStorage
    "1.2.840.10008.5.1.4.1.1.9.1.3",  # AmbulatoryECGWaveformStorage
    "1.2.840.10008.5.1.4.1.1.9.2.1",  # HemodynamicWaveformStorage
    "1.2.840.10008.5.1.4.1.1.9.3.1",  # CardiacElectrophysiologyWaveformStorage
    "1.2.840.10008.5.1.4.1.1.9.4.1",  # BasicVoiceAudioWaveformStorage
    "1.2.840.10008.5.1.4.1.1.11.1",  # GrayscaleSoftcopyPresentationStateStorageSOPClass
    "1.2.840.10008.5.1.4.1.1.11.2",  # ColorSoftcopyPresentationStateStorageSOPClass
    "1.2.840.10008.5.1.4.1.1.11.3",  # PseudoColorSoftcopyPresentationStateStorageSOPClass
    "1.2.840.10008.5.1.4.1.1.11.4",  # BlendingSoftcopyPresentationStateStorageSOPClass
    "1.2.840.10008.5.1.4.1.1.12.1",  # XRayAngiographicImageStorage
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # EnhancedXAImageStorage
    "1.2.840.10008.5.1.4.1.1.12.2",  # XRayRadiofluoroscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # EnhancedXRFImageStorage
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # XRay3DAngiographicImageStorage
    "1.2.840.10008.5.1.4.1.1.13.1.2",  # XRay3DCraniofacialImageStorage
    "1.2.840.10008.5.1.4.1.1.20",  # NuclearMedicineImageStorage
    "1.2.840.10008.5.1.4.1.1.66",  # RawDataStorage
    "1.2.840.10008.5.1.4.1.1.66.1",  # SpatialRegistrationStorage
    "1.2.840.10008.5.1.4.1.1.66.2",  # SpatialFiducialsStorage
    "1.2.840.10008.5.1.4.1.1.66.3",  # DeformableSpatialRegistrationStorage
    "1.2.840.10008.5.1.4.1.1.66.4",  # SegmentationStorage
    "1.2.840.10008.5.1.4.1.1.67",  # RealWorldValueMappingStorage
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VLEndoscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # VideoEndoscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.2",  # VLMicroscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # VideoMicroscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.3",  # VLSlideCoordinatesMicroscopicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VLPhotographicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # VideoPhotographicImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # OphthalmicPhotography8BitImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # OphthalmicPhotography16BitImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.5.4",  # OphthalmicTomographyImageStorage
    "1.2.840.10008.5.1.4.1.1.77.1.5.3",  # StereometricRelationshipStorage
    "1.2.840.10008.5.1.4.1.1.88.11",  # BasicTextSRStorage
    "1.2.840.10008.5.1.4.1.1.88.22",  # EnhancedSRStorage
    "1.2.840.10008.5.1.4.1.1.88.33",  # ComprehensiveSRStorage
    "1.2.840.10008.5.1.4.1.1.88.40",  # ProcedureLogStorage
    "1.2.840.10008.5.1.4.1.1.88.50",  # MammographyCADSRStorage
    "1.2.840.10008.5.1.4.1.1.88.59",  # KeyObjectSelectionDocumentStorage
    "1.2.840.10008.5.1.4.1.1.88.65",  # ChestCADSRStorage
    "1.2.840.10008.5.1.4.1.1.88.67",  # XRayRadiationDoseSRStorage
    "1.2.840.10008.5.1.4.1.1.104.1",  # EncapsulatedPDFStorage
    "1.2.840.10008.5.1.4.1.1.128",  # PositronEmissionTomographyImageStorage
    "1.2.840.10008.5.1.4.1.1.481.1",  # RTImageStorage
    "1.2.840.10008.5.1.4.1.1.481.2",  # RTDoseStorage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RTStructureSetStorage
    "1.2.840.10008.5.1.4.1.1.481.4",  # RTBeamsTreatmentRecordStorage
    "1.2.840.10008.5.1.4.1.1.481.5",  # RTPlanStorage
    "1.2.840.10008.5.1.4.1.1.481.6",  # RTBrachyTreatmentRecordStorage
    "1.2.840.10008.5.1.4.1.1.481.7",  # RTTreatmentSummaryRecordStorage
    "1.2.840.10008.5.1.4.1.1.481.8",  # RTIonPlanStorage
    "1.2.840.10008.5.1.4.1.1.481.9",  # RTIonBeamsTreatmentRecordStorage
    "1.2.840.10008.5.1.4.1.1.4.3",  # EnhancedMRColorImageStorage
    "1.3.12.2.1107.5.9.1",  # SiemensCSANonImageStorage
    "1.3.46.670589.2.4.1.1",  # PhilipsPrivateCXImageStorage
    "1.3.46.670589.5.0.1",  # PhilipsPrivateVolumeStorage
    "1.3.46.670589.5.0.2",  # PhilipsPrivate3DObjectStorage
    "1.3.46.670589.5.0.2.1",  # PhilipsPrivate3DObject2Storage
    "1.3.46.670589.5.0.3",  # PhilipsPrivateSurfaceStorage
    "1.3.46.670589.5.0.3.1",  # PhilipsPrivateSurface2Storage
    "1.3.46.670589.5.0.4",  # PhilipsPrivateCompositeObjectStorage
    "1.3.46.670589.5.0.7",  # PhilipsPrivateMRCardioProfile
    "1.3.46.670589.5.0.8",  # PhilipsPrivateMRCardio
    "1.3.46.670589.5.0.9",  # PhilipsPrivateCTSyntheticImageStorage
    "1.3.46.670589.5.0.10",  # PhilipsPrivateMRSyntheticImageStorage
    "1.3.46.670589.5.0.11",  # PhilipsPrivateMRCardioAnalysisStorage
    "1.3.46.670589.5.0.12",  # PhilipsPrivateCXSyntheticImageStorage
    "1.3.46.670589.11.0.0.12.1",  # PhilipsPrivateGyroscanMRSpectrum
    "1.3.46.670589.11.0.0.12.2",  # PhilipsPrivateGyroscanMRSerieData
    "1.3.46.670589.11.0.0.12.4",  # PhilipsPrivateMRExamcardStorage
    "1.3.46.670589.2.3.1.1",  # PhilipsPrivateSpecializedXAStorage
    "1.2.840.10008.5.1.4.1.1.78.5",  # Visual Acuity Measurements Storage
    "1.2.840.10008.5.1.4.1.1.9.5.1",  # Arterial Pulse Waveform Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image Storage
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.11.6",  # Grayscale Planar MPR Volumetric Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.10",  # Segmented Volume Rendering Volumetric Presentation State St…
    "1.2.840.10008.5.1.4.1.1.11.9",  # Volume Rendering Volumetric Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.11",  # Multiple Volume Rendering Volumetric Presentation State Sto…
    "1.2.840.10008.5.1.4.1.1.78.3",  # Keratometry Measurements Storage
    "1.2.840.10008.5.1.4.1.1.81.1",  # Ophthalmic Thickness Map Storage
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.88.69",  # Colon CAD SR Storage
    "1.2.840.10008.5.1.4.1.1.11.8",  # Advanced Blending Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.88.71",  # Acquisition Context SR Storage
    "1.2.840.10008.5.1.4.1.1.78.7",  # Ophthalmic Axial Measurements Storage
    "1.2.840.10008.5.1.4.1.1.66.6",  # Tractography Results Storage
    "1.2.840.10008.5.1.4.1.1.79.1",  # Macular Grid Thickness and Volume Report Storage
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.14.1",  # Intravascular Optical Coherence Tomography Image Storage - F…
    "1.2.840.10008.5.1.4.34.10",  # RT Brachy Application Setup Delivery Instruction Storage
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.6",  # Wide Field Ophthalmic Photography 3D Coordinates Image S…
    "1.2.840.10008.5.1.4.1.1.9.6.1",  # Respiratory Waveform Storage
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.10",  # RT Physician Intent Storage
    "1.2.840.10008.5.1.4.1.1.88.74",  # Planned Imaging Agent Administration SR Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.5",  # Wide Field Ophthalmic Photography Stereographic Projecti…
    "1.2.840.10008.5.1.4.1.1.77.1.5.7",  # Ophthalmic Optical Coherence Tomography En Face Image St…
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA Storage
    "1.2.840.10008.5.1.4.1.1.88.75",  # Performed Imaging Agent Administration SR Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.78.2",  # Autorefraction Measurements Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Ophthalmic Optical Coherence Tomography B-scan Volume An…
    "1.2.840.10008.5.1.4.1.1.78.1",  # Lensometry Measurements Storage
    "1.2.840.10008.5.1.4.1.1.80.1",  # Ophthalmic Visual Field Static Perimetry Measurements Storage
    "1.2.840.10008.5.1.4.1.1.481.11",  # RT Segment Annotation Storage
    "1.2.840.10008.5.1.4.1.1.14.2",  # Intravascular Optical Coherence Tomography Image Storage - F…
    "1.2.840.10008.5.1.4.1.1.11.5",  # XA/XRF Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image Storage
    "1.2.840.10008.5.1.4.1.1.131",  # Basic Structured Display Storage
    "1.2.840.10008.5.1.4.1.1.11.7",  # Compositing Planar MPR Volumetric Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.200.2",  # CT Performed Procedure Protocol Storage
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.9.4.2",  # General Audio Waveform Storage
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.34.7",  # RT Beams Delivery Instruction Storage
    "1.2.840.10008.5.1.4.1.1.78.4",  # Subjective Refraction Measurements Storage
    "1.2.840.10008.5.1.4.1.1.78.8",  # Intraocular Lens Calculations Storage
    "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL Storage
    "1.2.840.10008.5.1.4.1.1.68.1",  # Surface Scan Mesh Storage
    "1.2.840.10008.5.1.4.1.1.90.1",  # Content Assessment Results Storage
    "1.2.840.10008.5.1.4.1.1.78.6",  # Spectacle Prescription Report Storage
    "1.2.840.10008.5.1.4.1.1.68.2",  # Surface Scan Point Cloud Storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.88.72",  # Simplified Adult Echo SR Storage
    "1.2.840.10008.5.1.4.1.1.82.1",  # Corneal Topography Map Storage
    "1.2.840.10008.5.1.4.1.1.88.70",  # Implantation Plan SR Storage
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR Storage
)
