using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using Xunit;

namespace WeakTeacher.Tests.Runtime;

/// <summary>
/// TorchSharp's implicit conversions (double, long, bool -> <c>Scalar</c>) make a finalizable native object that no
/// one holds: once its handle is read the object is unreachable, so a collection started by any other thread can run
/// its finalizer (which deletes the native at::Scalar) while libtorch is still reading it ("Expected false to be true"
/// from c10/core/Scalar.h, or silently wrong numbers). TorchSharp does the same inside some of its own methods
/// (<c>Tensor * double</c>, <c>add_(Tensor)</c>, <c>linalg.vector_norm</c>, <c>square()</c>, the optimizers' step).
/// This reads the IL of the engine and kernels assemblies and lists every such conversion and every call into a
/// TorchSharp method that makes one; there must be none (the engine passes scalars through
/// <c>WeakTeacher.Engine.Runtime.Scalars</c>, which keeps each one alive across the native call).
/// </summary>
public class ScalarLifetimeTests
{
    [Theory]
    [InlineData("WeakTeacher.Engine.dll")]
    [InlineData("WeakTeacher.CudaKernels.dll")]
    public void NoUnrootedScalarsInTheEngineOrKernels(string assembly)
    {
        var path = Path.Combine(AppContext.BaseDirectory, assembly);
        Assert.True(File.Exists(path), path);
        var sites = UnrootedScalarSites(path, Path.Combine(AppContext.BaseDirectory, "TorchSharp.dll"));
        Assert.True(sites.Count == 0, $"{sites.Count} calls in {assembly} make a Scalar that nothing keeps alive:\n" + string.Join("\n", sites));
    }

    /// <summary>"Caller -> TorchSharp member" for each call that makes an unrooted Scalar.</summary>
    internal static List<string> UnrootedScalarSites(string assemblyPath, string torchSharpPath)
    {
        var (offendingMembers, offendingTypes) = TorchSharpOffenders(torchSharpPath);
        var sites = new SortedSet<string>(StringComparer.Ordinal);
        using var pe = new PEReader(File.OpenRead(assemblyPath));
        var md = pe.GetMetadataReader();
        var names = new SignatureNames();
        foreach (var (type, methodHandle, calls) in Methods(pe, md))
            foreach (var call in calls)
            {
                if (call.Kind != HandleKind.MemberReference) continue;
                var member = md.GetMemberReference((MemberReferenceHandle)call);
                if (member.GetKind() != MemberReferenceKind.Method || member.Parent.Kind != HandleKind.TypeReference) continue;
                var parent = SignatureNames.Name(md, (TypeReferenceHandle)member.Parent);
                if (!parent.StartsWith("TorchSharp.", StringComparison.Ordinal)) continue;
                var signature = member.DecodeMethodSignature(names, null);
                var key = $"{parent}::{md.GetString(member.Name)}({string.Join(",", signature.ParameterTypes)})";
                bool implicitScalar = md.GetString(member.Name) == "op_Implicit" && signature.ReturnType == "TorchSharp.Scalar";
                if (implicitScalar || offendingMembers.Contains(key) || offendingTypes.Contains(parent) || offendingTypes.Contains(signature.ReturnType))
                    sites.Add($"{SignatureNames.Name(md, type)}.{md.GetString(md.GetMethodDefinition(methodHandle).Name)} -> {key}");
            }
        return sites.ToList();
    }

    /// <summary>
    /// TorchSharp members that make a Scalar (ToScalar / implicit conversion) or call one that does (transitively,
    /// lambdas included), and the types whose lambdas do (the optimizers: their step runs through a delegate).
    /// </summary>
    private static (HashSet<string> Members, HashSet<string> Types) TorchSharpOffenders(string path)
    {
        using var pe = new PEReader(File.OpenRead(path));
        var md = pe.GetMetadataReader();
        var names = new SignatureNames();
        var callers = new Dictionary<MethodDefinitionHandle, List<MethodDefinitionHandle>>();
        var offending = new HashSet<MethodDefinitionHandle>();
        var owner = new Dictionary<MethodDefinitionHandle, TypeDefinition>();
        foreach (var (type, self, calls) in Methods(pe, md))
        {
            owner[self] = type;
            foreach (var call in calls.Where(c => c.Kind == HandleKind.MethodDefinition).Select(c => (MethodDefinitionHandle)c))
            {
                var callee = md.GetMethodDefinition(call);
                var calleeType = md.GetString(md.GetTypeDefinition(callee.GetDeclaringType()).Name);
                if (calleeType is "Scalar" or "ScalarExtensionMethods" && md.GetString(callee.Name) is "ToScalar" or "op_Implicit")
                    offending.Add(self);
                if (!callers.TryGetValue(call, out var list)) callers[call] = list = new();
                list.Add(self);
            }
        }
        var queue = new Queue<MethodDefinitionHandle>(offending);
        while (queue.Count > 0)
            foreach (var caller in callers.GetValueOrDefault(queue.Dequeue()) ?? new())
                if (offending.Add(caller)) queue.Enqueue(caller);
        var members = new HashSet<string>(StringComparer.Ordinal);
        var types = new HashSet<string>(StringComparer.Ordinal);
        foreach (var handle in offending)
        {
            var method = md.GetMethodDefinition(handle);
            var type = owner[handle];
            var typeName = SignatureNames.Name(md, type);
            if (md.GetString(type.Name).StartsWith('<') || md.GetString(method.Name).StartsWith('<'))
            {
                // a lambda or its closure class: attribute it to the enclosing user type
                while (md.GetString(type.Name).StartsWith('<')) type = md.GetTypeDefinition(type.GetDeclaringType());
                if (md.GetString(type.Namespace) == "TorchSharp.Modules") types.Add(SignatureNames.Name(md, type));
                continue;
            }
            if (md.GetString(method.Name) is "ToScalar" or "op_Implicit" && md.GetString(type.Name) is "Scalar" or "ScalarExtensionMethods") continue;
            var signature = method.DecodeSignature(names, null);
            members.Add($"{typeName}::{md.GetString(method.Name)}({string.Join(",", signature.ParameterTypes)})");
        }
        return (members, types);
    }

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>Every method with a body, with the methods it calls, constructs or takes a delegate to.</summary>
    private static IEnumerable<(TypeDefinition Type, MethodDefinitionHandle Method, List<EntityHandle> Calls)> Methods(PEReader pe, MetadataReader md)
    {
        foreach (var typeHandle in md.TypeDefinitions)
        {
            var type = md.GetTypeDefinition(typeHandle);
            foreach (var methodHandle in type.GetMethods())
            {
                var method = md.GetMethodDefinition(methodHandle);
                if (method.RelativeVirtualAddress == 0) continue;
                var il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILBytes();
                if (il is null) continue;
                var calls = new List<EntityHandle>();
                for (int i = 0; i < il.Length;)
                {
                    short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
                    var op = OpCodesByValue[value];
                    i += op.Size;
                    if (op == OpCodes.Call || op == OpCodes.Callvirt || op == OpCodes.Newobj || op == OpCodes.Ldftn || op == OpCodes.Ldvirtftn)
                    {
                        var handle = MetadataTokens.EntityHandle(BitConverter.ToInt32(il, i));
                        if (handle.Kind == HandleKind.MethodSpecification) handle = md.GetMethodSpecification((MethodSpecificationHandle)handle).Method;
                        calls.Add(handle);
                    }
                    i += op.OperandType switch
                    {
                        OperandType.InlineNone => 0,
                        OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                        OperandType.InlineVar => 2,
                        OperandType.InlineI8 or OperandType.InlineR => 8,
                        OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                        _ => 4,
                    };
                }
                yield return (type, methodHandle, calls);
            }
        }
    }

    /// <summary>Type names for signatures, the same whether a type is defined in the assembly or referenced.</summary>
    private sealed class SignatureNames : ISignatureTypeProvider<string, object?>
    {
        public string GetArrayType(string element, ArrayShape shape) => element + "[,]";
        public string GetByReferenceType(string element) => element + "&";
        public string GetFunctionPointerType(MethodSignature<string> signature) => "fnptr";
        public string GetGenericInstantiation(string generic, ImmutableArray<string> arguments) => generic + "<" + string.Join(",", arguments) + ">";
        public string GetGenericMethodParameter(object? context, int index) => "!!" + index;
        public string GetGenericTypeParameter(object? context, int index) => "!" + index;
        public string GetModifiedType(string modifier, string unmodified, bool isRequired) => unmodified;
        public string GetPinnedType(string element) => element;
        public string GetPointerType(string element) => element + "*";
        public string GetPrimitiveType(PrimitiveTypeCode type) => type.ToString();
        public string GetSZArrayType(string element) => element + "[]";
        public string GetTypeFromDefinition(MetadataReader md, TypeDefinitionHandle handle, byte kind) => Name(md, md.GetTypeDefinition(handle));
        public string GetTypeFromReference(MetadataReader md, TypeReferenceHandle handle, byte kind) => Name(md, handle);
        public string GetTypeFromSpecification(MetadataReader md, object? context, TypeSpecificationHandle handle, byte kind) =>
            md.GetTypeSpecification(handle).DecodeSignature(this, context);

        public static string Name(MetadataReader md, TypeDefinition type)
        {
            var declaring = type.GetDeclaringType();
            return declaring.IsNil ? md.GetString(type.Namespace) + "." + md.GetString(type.Name)
                : Name(md, md.GetTypeDefinition(declaring)) + "+" + md.GetString(type.Name);
        }

        public static string Name(MetadataReader md, TypeReferenceHandle handle)
        {
            var reference = md.GetTypeReference(handle);
            return reference.ResolutionScope.Kind == HandleKind.TypeReference
                ? Name(md, (TypeReferenceHandle)reference.ResolutionScope) + "+" + md.GetString(reference.Name)
                : md.GetString(reference.Namespace) + "." + md.GetString(reference.Name);
        }
    }
}
