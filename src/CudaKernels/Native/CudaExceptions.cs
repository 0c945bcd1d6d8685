namespace WeakTeacher.CudaKernels.Native;

/// <summary>A CUDA driver or NVRTC call returned an error. <see cref="Call"/> names the call, <see cref="ErrorName"/> is
/// the CUDA name of the code (e.g. CUDA_ERROR_ILLEGAL_ADDRESS).</summary>
public sealed class CudaException : Exception
{
    public CudaException(string call, int code, string errorName, string description, string? detail = null)
        : base($"{call} failed: {errorName} ({code}): {description}" + (string.IsNullOrEmpty(detail) ? "" : Environment.NewLine + detail))
    {
        Call = call;
        Code = code;
        ErrorName = errorName;
    }

    /// <summary>The driver/NVRTC function that failed.</summary>
    public string Call { get; }

    /// <summary>The numeric CUresult / nvrtcResult.</summary>
    public int Code { get; }

    /// <summary>The symbolic name of the code.</summary>
    public string ErrorName { get; }
}

/// <summary>CUDA cannot be used in this process: the driver library or NVRTC is missing, or there is no device.</summary>
public sealed class CudaUnavailableException : Exception
{
    public CudaUnavailableException(string message, Exception? inner = null) : base(message, inner) { }
}
