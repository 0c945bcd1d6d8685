namespace WeakTeacher.GrpcHost.Validation;

/// <summary>Display names and relative paths that clients send; none may name or reach a server path.</summary>
internal static class Names
{
    /// <summary>1-128 of [A-Za-z0-9._-], not starting with '.' (so never "." or ".." and never hidden).</summary>
    public static string CheckName(string field, string? name)
    {
        if (string.IsNullOrEmpty(name)) throw RequestErrors.Invalid(field, "required");
        if (name.Length > 128) throw RequestErrors.Invalid(field, "longer than 128 characters");
        if (name[0] == '.') throw RequestErrors.Invalid(field, "must not start with '.'");
        foreach (var c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
                throw RequestErrors.Invalid(field, $"character '{Printable(c)}' is not allowed (letters, digits, '.', '_', '-')");
        return name;
    }

    /// <summary>
    /// A relative file path inside a model (e.g. "tokenizer.json", "adapter/adapter_config.json"): '/'-separated
    /// segments that each pass <see cref="CheckName"/>, at most 8 deep.
    /// </summary>
    public static string CheckRelativeFilePath(string field, string? path)
    {
        if (string.IsNullOrEmpty(path)) throw RequestErrors.Invalid(field, "required");
        if (path.Length > 512) throw RequestErrors.Invalid(field, "longer than 512 characters");
        if (path.StartsWith('/') || path.Contains('\\') || path.Contains(':'))
            throw RequestErrors.Invalid(field, "must be a relative path with '/' separators");
        var segments = path.Split('/');
        if (segments.Length > 8) throw RequestErrors.Invalid(field, "more than 8 folders deep");
        foreach (var segment in segments)
        {
            if (segment is "" or "." or "..") throw RequestErrors.Invalid(field, $"segment '{RequestErrors.Echo(segment)}' is not allowed");
            CheckName(field, segment);
        }
        return path;
    }

    /// <summary>
    /// Resolves <paramref name="relative"/> inside <paramref name="root"/>. Absolute paths, ".." segments, and symbolic
    /// links anywhere on the way are refused, so the result can only be a real entry under the root.
    /// </summary>
    public static string ResolveInside(string field, string root, string? relative)
    {
        if (string.IsNullOrEmpty(relative)) throw RequestErrors.Invalid(field, "required");
        if (relative.Length > 1024) throw RequestErrors.Invalid(field, "longer than 1024 characters");
        if (relative.Contains('\0')) throw RequestErrors.Invalid(field, "contains a NUL character");
        if (Path.IsPathRooted(relative) || relative.StartsWith('~'))
            throw RequestErrors.Invalid(field, "must be relative to the import folder");
        var segments = relative.Split('/', '\\');
        if (segments.Any(s => s == ".."))
            throw RequestErrors.Invalid(field, "must not contain '..'");
        var fullRoot = Path.GetFullPath(root);
        var full = Path.GetFullPath(Path.Combine(fullRoot, relative));
        var rootWithSeparator = fullRoot.EndsWith(Path.DirectorySeparatorChar) ? fullRoot : fullRoot + Path.DirectorySeparatorChar;
        if (!full.StartsWith(rootWithSeparator, StringComparison.Ordinal))
            throw RequestErrors.Invalid(field, "resolves outside the import folder");
        // No symbolic link on the way (a link could point anywhere on the server).
        var current = fullRoot;
        foreach (var segment in Path.GetRelativePath(fullRoot, full).Split(Path.DirectorySeparatorChar))
        {
            current = Path.Combine(current, segment);
            var info = new FileInfo(current);
            if (info.Exists || Directory.Exists(current))
            {
                if (info.LinkTarget is not null || new DirectoryInfo(current).LinkTarget is not null)
                    throw RequestErrors.Invalid(field, "is or passes through a symbolic link, which imports do not follow");
            }
        }
        return full;
    }

    private static string Printable(char c) => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString();
}
